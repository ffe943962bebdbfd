"""Calibration modes (``[calibration] mode``), one module per mode, registered in
:data:`brevitas_ldm.registry.CALIBRATION_MODES` when imported. Importing this package imports nothing."""
