"""Stage 1: the bottleneck cache."""

from mlkit.bottlenecks.cache import FeatureCache, open_cache, write_cache
from mlkit.bottlenecks.extract import CacheResult, cache_features, fit_zmuv_stats
from mlkit.bottlenecks.shards import merge_shards

__all__ = ["CacheResult", "FeatureCache", "cache_features", "fit_zmuv_stats", "merge_shards", "open_cache", "write_cache"]
