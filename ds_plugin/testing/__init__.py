"""ds_plugin.testing"""
