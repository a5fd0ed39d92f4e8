__title__ = "spacy-ctxembed"
__version__ = "0.1.0"
