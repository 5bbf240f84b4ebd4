import SwiftUI

/// Order screen: settings until "Track" is tapped, then tracking + chat.
struct BuyerView: View {
    @EnvironmentObject var settings: Settings
    let platform: PlatformMonitor
    @State var model: BuyerModel? = nil

    var body: some View {
        NavigationStack {
            if let model {
                OrderView(model: model) {
                    model.close()
                    self.model = nil
                }
            } else {
                Form {
                    TextField("URL", text: $settings.url).textInputAutocapitalization(.never)
                    TextField("Your id", text: $settings.userId).textInputAutocapitalization(.never)
                    SecureField("Token", text: $settings.token)
                    TextField("Courier id", text: $settings.trackDriverId).textInputAutocapitalization(.never)
                    TextField("Order room", text: $settings.room).textInputAutocapitalization(.never)
                    Button("Track order and chat") { model = BuyerModel(settings: settings, platform: platform) }
                }
                .navigationTitle("Order")
            }
        }
    }
}

struct OrderView: View {
    @ObservedObject var model: BuyerModel
    let onClose: () -> Void

    var body: some View {
        VStack(alignment: .leading, spacing: 8) {
            Text(model.connection).font(.caption).italic()
            Text(model.tracking).font(.title3)
            if let error = model.lastError { Text(error).font(.caption).foregroundStyle(.red) }
            ChatView(model: model)
        }
        .padding()
        .navigationTitle("Your order")
        .toolbar { Button("Close", action: onClose) }
    }
}

struct ChatView: View {
    @ObservedObject var model: BuyerModel
    @State private var draft = ""

    var body: some View {
        VStack {
            ScrollViewReader { proxy in
                List(model.messages, id: \.clientId) { m in
                    MessageRow(entry: m, mine: m.sender == model.me).id(m.clientId)
                }
                .listStyle(.plain)
                .onChange(of: model.messages.count) { _ in
                    if let last = model.messages.last { proxy.scrollTo(last.clientId, anchor: .bottom) }
                }
            }
            if let typing = model.typing { Text(typing).font(.caption).foregroundStyle(.secondary) }
            HStack {
                TextField("Message", text: $draft)
                    .textFieldStyle(.roundedBorder)
                    .onChange(of: draft) { _ in model.userIsTyping() }
                    .onSubmit(send)
                Button("Send", action: send).disabled(draft.trimmingCharacters(in: .whitespaces).isEmpty)
            }
        }
    }

    private func send() {
        let body = draft.trimmingCharacters(in: .whitespaces)
        guard !body.isEmpty else { return }
        model.send(body)
        draft = ""
    }
}

struct MessageRow: View {
    let entry: ChatEntry
    let mine: Bool

    var body: some View {
        HStack {
            if mine { Spacer() }
            VStack(alignment: mine ? .trailing : .leading) {
                if !mine { Text(entry.sender).font(.caption2).foregroundStyle(.secondary) }
                Text(entry.body)
                    .padding(8)
                    .background(mine ? Color.accentColor.opacity(0.2) : Color.secondary.opacity(0.15))
                    .clipShape(RoundedRectangle(cornerRadius: 10))
                switch entry.status {
                case .pending: Text("sending…").font(.caption2).foregroundStyle(.secondary)
                case .failed: Text("not sent").font(.caption2).foregroundStyle(.red)
                case .sent, .received: EmptyView()
                }
            }
            if !mine { Spacer() }
        }
    }
}
