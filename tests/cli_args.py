"""Command-line arguments the job tests share: a quantize run small enough for the test suite."""

#: 4 evaluation samples in one batch, 3 steps, 2 calibration prompts.
FAST = ["--num-samples", "4", "--steps", "3", "--batch-size", "4", "--calibration-prompts", "2"]


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI on ``argv`` in this process and return its error: exit 2, one line, no traceback, holding every
    one of ``needles``."""
    from brevitas_ldm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
