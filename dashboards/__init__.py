"""auralens.dashboards"""
