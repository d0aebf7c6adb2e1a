"""Oracle counterfactuals: the ones that came with the data (synthetic or semi-synthetic sets)."""

from __future__ import annotations

from chanstat.counterfactual.base import CounterfactualProvider


class OracleCounterfactuals(CounterfactualProvider):
    """Use ``dataset.counterfactuals`` / ``dataset.counterfactual_target`` as they are.

    Synthetic data (:func:`chanstat.data.synthetic`) and semi-synthetic data
    (:func:`chanstat.data.semisynthetic.plant`) know each image's exact counterfactual: the same
    cells rendered with the other class's phenotype. This is the reference every other provider
    is compared with. The target rule is ignored: the data fixes the targets.
    """

    name = "oracle"
    needs_model = False
    description = "counterfactuals stored with the data set (synthetic / planted phenotypes)"

    def _generate(self, dataset, target):
        if dataset.counterfactuals is None or dataset.counterfactual_target is None:
            raise ValueError(
                "provider 'oracle' needs a data set with counterfactuals (synthetic data, or real tiles with a "
                "[data.plant] section); this one has none -- use 'from_files', 'nearest' or 'optimise'"
            )
        return dataset.counterfactuals, dataset.counterfactual_target, None, {}
