import NIOSSL

/// TLS for servers with a private certificate authority: `AWS_CA_BUNDLE` names a PEM file of the CAs to
/// trust instead of the system's, as for the AWS CLI and SDKs.
enum S3TLS {
    static func configuration(caBundle: String) -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .file(caBundle)
        return configuration
    }
}
