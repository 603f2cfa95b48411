CODE_PROMPT = """Complete the Python function below so that it does what its docstring says and passes its examples.

"""
