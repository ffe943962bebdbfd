"""One phase of a job: whether it runs, what it costs, how it runs - in one object, so that pricing a job and
running it read the same conditions instead of two copies of them."""

from __future__ import annotations

from brevitas_ldm.cost import Phase
from brevitas_ldm.job.state import JobState


class JobPhase:
    """Subclasses set ``name`` (the plan of work's row), ``key`` (the ``timing_s``/``denoiser_calls`` entry) and
    implement :meth:`enabled`, :meth:`cost` and :meth:`run`."""

    name: str = ""
    key: str = ""

    def enabled(self, state: JobState) -> bool:
        """Whether the recipe (and the job's inputs: a given plan, ``--local``) asks for this phase."""
        raise NotImplementedError

    def cost(self, state: JobState) -> Phase:
        """The denoiser calls the phase will make, from the object that makes them (called before :meth:`run`)."""
        raise NotImplementedError

    def run(self, state: JobState) -> None:
        """Do the work on ``state`` (the pipeline, in place) and record it in ``state.result``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
