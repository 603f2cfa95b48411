"""AFlow-style search over workflows: selection, proposal, evaluation, experience, convergence."""
