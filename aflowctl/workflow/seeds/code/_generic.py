CODE_PROMPT = """Write the Python function the task below describes.

"""
