SOLVE_PROMPT = """Compute the answer to the arithmetic problem below. Work it out step by step, and write the final number alone on the last line.

Problem:
"""
