SOLVE_PROMPT = """Answer the question using the context given with it. Reply with the answer only: an entity name, a short phrase, a date or a number, with no explanation.

"""
