"""Which class each counterfactual should belong to.

DAC compares a real image with the same cell "as it would look in another class". With two
classes the other class is unambiguous; with more, a rule has to choose. Rules are plain
strings so they can be written in a config file.
"""

from __future__ import annotations

from typing import Sequence

import torch

TARGET_RULES = ("auto", "other", "next", "most_likely")


def choose_targets(
    labels: torch.Tensor,
    classes: Sequence[str],
    rule: str = "auto",
    probabilities: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target class of every counterfactual.

    Parameters
    ----------
    labels : torch.Tensor, shape (N,), int64
        Class index of every real image.
    classes : sequence of str, length K
        Class names.
    rule : str
        ``"other"`` -- the other class (exactly two classes);
        ``"next"`` -- class ``(label + 1) mod K``;
        ``"most_likely"`` -- the class other than the image's own that the classifier finds
        most probable (needs ``probabilities``);
        ``"auto"`` -- ``"other"`` for two classes, ``"most_likely"`` otherwise;
        a class name -- every image not of that class targets it (e.g. ``"control"``: "how
        would this cell look untreated?"); images of that class fall back to ``"most_likely"``
        (or ``"next"`` when no probabilities are given).
    probabilities : torch.Tensor, shape (N, K), optional
        Classifier probabilities for the real images (``softmax(f(x))``).

    Returns
    -------
    torch.Tensor, shape (N,), int64
        Target class indices; never equal to ``labels``.
    """
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    classes = list(classes)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"counterfactuals need at least two classes; this set has {classes}")
    if probabilities is not None:
        probabilities = torch.as_tensor(probabilities).detach().float().cpu()
        if probabilities.shape != (labels.shape[0], n_classes):
            raise ValueError(
                f"probabilities must have shape ({labels.shape[0]}, {n_classes}); got {tuple(probabilities.shape)}"
            )
    if rule == "auto":
        rule = "other" if n_classes == 2 else "most_likely"
    if rule == "other":
        if n_classes != 2:
            raise ValueError(
                f"target rule 'other' needs exactly two classes; this set has {n_classes} ({classes}). "
                "Use 'next', 'most_likely' or a class name."
            )
        return 1 - labels
    if rule == "next":
        return (labels + 1) % n_classes
    if rule == "most_likely":
        if probabilities is None:
            raise ValueError("target rule 'most_likely' needs the classifier's probabilities (pass a model)")
        masked = probabilities.clone()
        masked[torch.arange(labels.shape[0]), labels] = -float("inf")
        return masked.argmax(dim=1)
    if rule in classes:
        reference = classes.index(rule)
        fallback = choose_targets(
            labels, classes, "most_likely" if probabilities is not None else "next", probabilities
        )
        return torch.where(labels == reference, fallback, torch.full_like(labels, reference))
    raise ValueError(f"unknown target rule {rule!r}; use one of {list(TARGET_RULES)} or a class name from {classes}")
