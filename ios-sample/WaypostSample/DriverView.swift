import SwiftUI

struct DriverView: View {
    @EnvironmentObject var settings: Settings
    @StateObject var model: DriverModel

    var body: some View {
        NavigationStack {
            Form {
                Section("Server") {
                    TextField("URL", text: $settings.url).textInputAutocapitalization(.never).keyboardType(.URL)
                    TextField("Driver id", text: $settings.userId).textInputAutocapitalization(.never)
                    SecureField("Token", text: $settings.token)
                }
                Section {
                    if model.isDriving {
                        Button("Stop driving", role: .destructive) { model.stop() }
                    } else {
                        Button("Start driving") { model.start(settings: settings) }
                    }
                    Text(model.status).font(.footnote)
                    Text("Location: \(model.authorization)").font(.footnote)
                    if !model.health.isEmpty {
                        Text(model.health).font(.footnote).foregroundColor(.orange)
                    }
                }
                Section("Events") {
                    ForEach(Array(model.events.enumerated()), id: \.offset) { _, line in
                        Text(line).font(.caption)
                    }
                }
            }
            .navigationTitle("Drive")
        }
    }
}
