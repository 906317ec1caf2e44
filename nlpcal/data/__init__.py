"""nlpcal.data"""
