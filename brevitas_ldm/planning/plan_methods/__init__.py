"""Plan methods (``[plan] method``), one module per method, registered in
:data:`brevitas_ldm.registry.PLAN_METHODS` when imported. Importing this package imports nothing."""
