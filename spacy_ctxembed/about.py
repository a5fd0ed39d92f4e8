__title__ = "spacy-ctxembed"
__version__ = "0.2.0"
