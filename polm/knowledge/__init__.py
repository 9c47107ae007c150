"""Knowledge mastery: SliCK categories of closed-book QA facts (Gekhman et al. 2024), probing a model for
them, transitions between two probes, and the two-stage fine-tuning curriculum (Li et al. 2024)."""
