"""dsco-hub: concentrate any Hugging Face image-classification dataset (DsCo, arXiv 2603.27987) and publish it."""

__version__ = "0.1.0"
