SOLVE_PROMPT = """Answer the arithmetic question. Give the final number at the end.

"""
