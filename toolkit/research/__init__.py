"""Research protocols over the ordinary build and evaluation (`adtk research ...`), kept apart from the everyday
`adtk eval` (which only scores an artefact on a test split):

    pollution.py        the polluted-training-set protocols (SROC's leak-free, PaIRE's leaky) and refinement quality
    polluted.py         build on a polluted training set, evaluate, and score the refinement
    known_anomalies.py  leave one defect type out: learn from labelled defects of the others, test on it
"""
