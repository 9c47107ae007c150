"""Model merging: pure per-tensor merge methods in a registry (polm.merge.methods), the merge plan
(polm.merge.plan) and a streaming runner (polm.merge.runner, `polm merge`)."""
