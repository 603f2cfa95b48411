SOLVE_PROMPT = """Solve the following problem. Reason step by step, and write the final answer alone on the last line.

"""
