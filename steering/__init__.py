"""auralens.steering"""
