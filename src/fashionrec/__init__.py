"""fashionrec: a visual fashion recommender.

The flow, one module per stage: catalog -> images -> encoder -> index (build) -> search,
with three thin surfaces over `Recommender`: cli, api, app.
"""

from fashionrec.build import build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import load_encoder
from fashionrec.search import Match, Recommender

__all__ = ["Match", "Recommender", "build_index", "load_catalog", "load_encoder"]
__version__ = "0.1.0"
