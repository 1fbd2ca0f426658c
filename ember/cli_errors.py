def explain(parser, message):
    return message
