SOLVE_PROMPT = """Solve the following competition math problem. Reason step by step, and give the final answer in LaTeX inside \\boxed{}.

Problem:
"""
