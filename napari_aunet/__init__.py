"""napari-aunet: Attention U-Net segmentation with per-level attention maps, for napari and the command line."""

__version__ = "0.1.0"
