import CKStore
