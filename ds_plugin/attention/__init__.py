"""ds_plugin.attention"""
