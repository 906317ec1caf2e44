"""nlpcal.metrics"""
