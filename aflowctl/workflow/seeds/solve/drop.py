SOLVE_PROMPT = """Read the passage and answer the question about it. Reply with the answer only: a number, a date, or a short span of the passage, with no explanation.

"""
