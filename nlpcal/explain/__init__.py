"""nlpcal.explain"""
