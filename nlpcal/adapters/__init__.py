"""nlpcal.adapters"""
