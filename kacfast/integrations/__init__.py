"""Bridges to other libraries; each is an optional extra (``kacfast.integrations.diffusers`` needs
``pip install kacfast[diffusers]``)."""
