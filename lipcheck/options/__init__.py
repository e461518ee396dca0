"""The choices lipcheck offers (methods, operators, formats, devices), shared by every part. Torch-free."""
