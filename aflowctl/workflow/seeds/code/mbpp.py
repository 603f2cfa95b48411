CODE_PROMPT = """Write the Python function the task below asks for; keep the function name and arguments it gives.

"""
