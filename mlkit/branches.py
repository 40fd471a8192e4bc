"""A top's branches: cached image features, caption tokens, or both (the captions ablation's three rows).

The rule lives here so the run-name grammar (`text-...only`), `TopConfig` and
the records that summarise runs read a branch the same way.
"""

# A top's branches and the inputs each takes: cached image "features", caption "tokens", or both.
BRANCH_INPUTS = {"image": ("features",), "both": ("features", "tokens"), "caption": ("tokens",)}


def branch_of(text, text_only):
    """Which branches a top has: "image" without a caption branch, "caption" if caption-only, else "both"."""
    if not text:
        return "image"
    return "caption" if text_only else "both"
