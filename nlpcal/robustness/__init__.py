"""nlpcal.robustness"""
