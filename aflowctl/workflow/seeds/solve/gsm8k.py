SOLVE_PROMPT = """Solve the following math word problem. Reason step by step, and write the final numeric answer alone on the last line.

Problem:
"""
