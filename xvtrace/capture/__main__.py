"""python -m xvtrace.capture: the capture command without the analysis stack."""

from xvtrace.capture.command import capture_cmd

capture_cmd(prog_name="xvtrace capture")
