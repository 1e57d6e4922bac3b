"""gridmap: geospatial grid management (网格化管理) for subdistrict offices."""

from gridmap.layers import LAYERS, REGISTRY, Layer, Prop, get_layer

__all__ = ["LAYERS", "REGISTRY", "Layer", "Prop", "get_layer"]
__version__ = "0.1.0"
