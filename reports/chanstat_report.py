# %% [markdown]
# ---
# title: "chanstat report"
# subtitle: "Which channel carries the difference between the classes?"
# format:
#   html:
#     embed-resources: true
#     toc: true
#     toc-depth: 2
#   typst:
#     toc: true
#     papersize: a4
#     margin:
#       x: 1.6cm
#       y: 1.6cm
# execute:
#   echo: false
#   warning: false
# jupyter: python3
# ---

# %%
#| tags: [parameters]
# The run directory to report on (quarto: -P run_dir:PATH; chanstat report RUN_DIR sets it).
run_dir = "."

# %%
from chanstat.report import sections as S
from chanstat.report.display import quiet_missing
from chanstat.rundir import RunDirectory

run = RunDirectory(run_dir)
# a run saved from Python holds only what the analysis saved: show that, without "stage not run" notes
quiet_missing(not run.has("provenance"))

# %% [markdown]
# ## The answer
#
# The verdict weighs every piece of evidence: the primary method's confidence set for the best
# channel, single-channel DAC, Shapley values, the other methods, CellProfiler, and how good the
# counterfactuals are (poor counterfactuals cap the grade). The details follow.

# %%
S.answer(run)

# %% [markdown]
# ## Run overview
#
# What this run directory holds. Every later section reads only files listed here; a stage
# that did not run leaves a note in its section instead of a figure.

# %%
S.overview(run)

# %% [markdown]
# ## Data and model
#
# The images the classifier was trained on and how well it separates the classes. The
# attribution results below are only as meaningful as this classifier is accurate.

# %%
S.data_and_model(run)

# %% [markdown]
# ### Classifier training

# %%
S.model_training(run)

# %% [markdown]
# ### Counterfactuals
#
# Every attribution method compares a real image with its counterfactual: the same cells
# showing the other class's phenotype.

# %%
S.counterfactual_quality(run)

# %% [markdown]
# ## Attribution galleries
#
# For a few images of each class transition (real class → counterfactual class): the real
# image and its counterfactual, one panel per channel in that stain's colour, then every
# method's map per channel. All panels of one method share one colour scale (diverging
# around 0 for signed maps), so channels compare directly. Maps that cannot resolve
# channels (Grad-CAM family) are shown once, marked "all channels".

# %%
S.attribution_galleries(run, per_transition=2)

# %% [markdown]
# ## Per-image explanations
#
# Each image's best explanation across methods and mask strategies (highest DAC). Per
# transition, the best-explained image and the typical one (median DAC): real, counterfactual,
# the optimal mask and the hybrid (real where the mask is on, counterfactual elsewhere).

# %%
S.explanation_gallery(run, per_transition=2)
S.explanations_page(run)

# %% [markdown]
# ### Plate layout
#
# Where on the plates the evidence lies (shown when wells carry plate positions such as `C03`).

# %%
S.plate_layout(run)

# %% [markdown]
# ## DAC: discriminative attribution curves
#
# For each mask size, the real image is pasted into the counterfactual where the mask is on,
# and the classifier's gain in the real class is recorded. A map that points at the evidence
# reaches a high score with a small mask; DAC is the area under the mean curve.

# %%
S.dac_curves(run)

# %% [markdown]
# ### Single-channel curves
#
# Only one channel is masked (the others stay counterfactual): how much of the decision does
# that channel alone carry?

# %%
S.single_channel_curves(run)

# %% [markdown]
# ### Optimal masks
#
# The masks at the best threshold, per channel.

# %%
S.optimal_masks(run)

# %% [markdown]
# ### Smoothing sweep
#
# DAC under different mask smoothing (morphological closing, Gaussian blur), including none.

# %%
S.smoothing_sweep(run)

# %% [markdown]
# ## Channel shares
#
# Each image's attribution mass split over channels (shares sum to 1; the dotted line is an
# even split). Then the tests of whether one channel dominates, with their intervals.

# %%
S.channel_shares(run)

# %% [markdown]
# ### Tests
#
# The primary test asks the biologist's question: does one channel's share exceed every other
# channel's? (a dominance test: each pair tested, a channel named only when it beats every
# rival; "none" otherwise). Beside it, whether the channel composition differs between plates.
# The equal-shares tests that follow are secondary: shares are never exactly equal, so they
# say little about which channel matters. Mixed-model rows are estimates only, without p-values.

# %%
S.channel_tests(run)

# %% [markdown]
# ### Confidence intervals

# %%
S.channel_share_ci(run)

# %% [markdown]
# ## Map similarity and strategies
#
# How alike the methods' maps are, and how the mask strategies compare.

# %%
S.map_similarity(run)

# %%
S.strategy_comparison(run)

# %% [markdown]
# ## Channel Shapley values
#
# Each channel's contribution to p(real class | real image) − p(real class | counterfactual):
# the classifier is shown hybrids that take some channels from the real image and the rest
# from the counterfactual, and every channel gets its exact Shapley share of the difference.
# Interactions say whether two channels act together (positive) or stand in for each other.

# %%
S.channel_shapley(run)

# %% [markdown]
# ## Localisation and faithfulness
#
# Localisation scores each map against the known signal (the synthetic set's signal masks;
# only the planted channel has ground truth): PxAP (%), Dice and mIoU at a threshold chosen
# on half of the wells, pointing game, relevance mass and rank. Faithfulness removes
# (deletion: a low area is faithful) or adds (insertion: a high area is faithful) the most
# attributed pixels first and follows the classifier's probability of the real class.

# %%
S.localisation(run)

# %% [markdown]
# ## CellProfiler features
#
# Differential CellProfiler features between the classes (the well is the unit), their
# channels, and whether one channel's features differ more than the other channels' (a
# competitive test whose permutations of whole wells keep the correlation between features;
# the counts and odds ratios beside it are descriptions).

# %%
S.cp_differential(run)

# %% [markdown]
# ### Channel enrichment

# %%
S.channel_enrichment(run)

# %% [markdown]
# ### Compartment × channel
#
# Where the attribution lies (mean share of the attribution mass per cell compartment and
# channel) beside where the CellProfiler features differ, on the same grid.

# %%
S.compartment_channel(run)

# %%
S.activity(run)

# %% [markdown]
# ## Concordance
#
# Do the attribution maps and the CellProfiler features rank the channels alike? With few
# channels the smallest attainable p-value is large; the note says what these ranks can show.

# %%
S.concordance(run)

# %% [markdown]
# ## Provenance
#
# What it takes to reproduce this run: versions, seed, device, configuration and timings.

# %%
S.provenance(run)
