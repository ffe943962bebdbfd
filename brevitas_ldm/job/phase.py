"""One phase of a job: whether it runs, what it costs, how it runs - in one object, so that pricing a job and
running it read the same conditions instead of two copies of them."""

from __future__ import annotations

from brevitas_ldm.cost import Phase
from brevitas_ldm.job.state import JobState


class JobPhase:
    """Subclasses set ``name`` (the plan of work's row), ``key`` (the ``timing_s``/``denoiser_calls`` entry) and
    implement :meth:`run`; a phase the recipe can switch off overrides :meth:`enabled`, and one that calls the
    denoiser overrides :meth:`cost`."""

    name: str = ""
    key: str = ""

    def enabled(self, state: JobState) -> bool:
        """Whether the recipe (and the job's inputs: a given plan, ``--local``) asks for this phase (default: it
        always runs)."""
        return True

    def cost(self, state: JobState) -> Phase | None:
        """The denoiser calls the phase will make, from the object that makes them (called before :meth:`run`);
        None for a phase that makes none (it gets no row in the plan of work)."""
        return None

    def run(self, state: JobState) -> None:
        """Do the work on ``state`` (the pipeline, in place) and record it in ``state.result``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
