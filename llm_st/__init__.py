"""llm-st: adapt pretrained language and vision models to spatio-temporal data."""

from llm_st.data.container import Adjacency, STData
from llm_st.errors import ConfigError, DataError, DataNotFoundError, LLMSTError, ModelLoadError

__version__ = "0.1.0"

__all__ = [
    "Adjacency",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "LLMSTError",
    "ModelLoadError",
    "STData",
    "__version__",
]
