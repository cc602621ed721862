"""ds_plugin.model"""
