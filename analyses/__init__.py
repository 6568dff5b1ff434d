"""Pure numerical analyses: arrays in, frozen result dataclasses out.

Modules (import the one you need; ``scaling`` pulls in statsmodels):
    superposition: row norms and mean squared overlap of an unembedding matrix.
    massive: massive activations from full activations or the streamed summary.
    dynamics: per-layer fit of a metric's training dynamics.
    text_dominance: attention shares, MDI and AEI per layer and layer third.
    retrieval: retrieval-head scores from top-1 attention during answers.
    scaling: power-law and saturating fits against parameter count or step.
"""
