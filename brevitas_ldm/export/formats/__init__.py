"""Export formats (``brevitas-ldm export --format``), one module per format, registered in
:data:`brevitas_ldm.registry.EXPORT_FORMATS` when imported. Importing this package imports nothing."""
