"""Witnesses of a row's labels beside its out-of-fold scores, and one combined score per row and label.

The out-of-fold scores (the fold tops' averaged with the linear witness's,
`linear`) are one witness. Two more come free from what the audit already
computes:

- the labels of the row's nearest neighbours in feature space (deep k-NN,
  Bahri, Jiang and Gupta, 2020): the share of its k neighbours that carry
  each label (for multiclass, each class), a row's own label left out. Where
  the fold tops read several taps, the space is theirs: the taps z-scored and
  weighted (`neighbours.standardised_neighbours`);
- the labels of its near-duplicate partners (`near`): the same picture
  filed elsewhere says what this one is.

They are averaged into one probability per row and label (`combine`), and
the label check (`mlkit.auditing.labels`) judges that in place of the fold
scores alone: the fold models see every feature of one row, the neighbours
see the collection's own labels around it, and the two err on different
rows. BENCHMARKS.md measures the combination against cleanlab.
"""

import numpy as np

# Weight of the neighbours' votes against the fold scores (chosen on the stamps, checked on the icons:
# BENCHMARKS.md); a near-duplicate partner's labels get PARTNER_WEIGHT of what is left.
NEIGHBOUR_WEIGHT = 0.5
PARTNER_WEIGHT = 0.5


def one_hot(labels, task, num_outputs):
    """Labels as a float (N, L) array: multi-hot as given, classes as one-hot."""
    if task == "multiclass":
        labels = np.asarray(labels, dtype=np.int64)
        hot = np.zeros((len(labels), num_outputs), np.float32)
        hot[np.arange(len(labels)), labels] = 1.0
        return hot
    return np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)


def neighbour_votes(labels, positions, k):
    """Each row's share of its first k neighbours carrying each label.

    Args:
        labels: float (N, L) multi-hot or one-hot labels (`one_hot`).
        positions: int (N, K >= k) neighbour positions, best first, -1 where none.
        k: neighbours that vote.

    Returns:
        float32 (N, L); a row without neighbours gets the labels' mean over all rows.
    """
    positions = np.asarray(positions)[:, :k]
    present = positions >= 0
    votes = (labels[np.where(present, positions, 0)] * present[..., None]).sum(axis=1)
    counts = present.sum(axis=1, keepdims=True)
    prior = np.broadcast_to(labels.mean(axis=0), votes.shape)
    return np.where(counts > 0, votes / np.maximum(counts, 1), prior).astype(np.float32)


def partner_votes(labels, rows, partners):
    """Each row's mean of its near-duplicate partners' labels, and whether it has any.

    Args:
        labels: float (N, L) labels.
        rows, partners: the pairs, positions into `labels` (each pair once, either order).

    Returns:
        (votes, has_partner): float32 (N, L), zero where a row has no partner; bool (N,).
    """
    rows, partners = np.asarray(rows, dtype=np.int64), np.asarray(partners, dtype=np.int64)
    ends = np.concatenate([rows, partners])
    others = np.concatenate([partners, rows])
    sums = np.zeros(labels.shape, np.float64)
    np.add.at(sums, ends, labels[others])
    counts = np.bincount(ends, minlength=len(labels))
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts > 0


def combine(scores, votes, partners=None, has_partner=None, neighbour_weight=NEIGHBOUR_WEIGHT,
            partner_weight=PARTNER_WEIGHT):
    """One probability per row and label from the witnesses.

    Args:
        scores: (N, L) out-of-fold probabilities.
        votes: (N, L) neighbour votes.
        partners, has_partner: `partner_votes`, or None without near duplicates. Defaults to None.
        neighbour_weight: the votes' weight against the scores. Defaults to `NEIGHBOUR_WEIGHT`.
        partner_weight: the partners' weight against both, where a row has partners. Defaults to `PARTNER_WEIGHT`.

    Returns:
        float64 (N, L); rows still sum to one for multiclass, as each witness does.
    """
    combined = (1 - neighbour_weight) * np.asarray(scores, np.float64) + neighbour_weight * np.asarray(votes, np.float64)
    if partners is not None and np.any(has_partner):
        mixed = (1 - partner_weight) * combined + partner_weight * partners
        combined = np.where(np.asarray(has_partner)[:, None], mixed, combined)
    return combined
