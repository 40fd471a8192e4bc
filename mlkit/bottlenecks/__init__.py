"""Stage 1: the bottleneck cache."""

from mlkit.bottlenecks.cache import FeatureCache, open_cache, write_cache
from mlkit.bottlenecks.extract import CacheResult, cache_features
