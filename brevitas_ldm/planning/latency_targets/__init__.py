"""Latency targets (``[plan] target``), one module per target, registered in
:data:`brevitas_ldm.registry.LATENCY_TARGETS` when imported. Importing this package imports nothing."""
