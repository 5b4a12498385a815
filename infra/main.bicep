// amlft's Azure footprint: an Azure ML workspace (with its storage, key vault and
// application insights), a GPU cluster that scales to zero, and a user-assigned identity
// that GitHub Actions signs in as through OIDC federation (no secrets anywhere).
// Deploy into an existing resource group; see infra/README.md for the command and cost.

@description('Azure region for every resource.')
param location string = resourceGroup().location

@minLength(3)
@maxLength(33)
@description('Azure ML workspace name (AZUREML_WORKSPACE_NAME in GitHub).')
param workspaceName string

@description('Short lowercase prefix for the storage account, key vault and monitoring names.')
@minLength(3)
@maxLength(10)
param namePrefix string = 'amlft'

@minLength(2)
@maxLength(16)
@description('GPU compute cluster for fine-tuning (compute.cluster in the run profile).')
param computeClusterName string = 'gpu-a100'

@description('VM size of the cluster nodes; must be on the model\'s fine-tune allow-list.')
param computeVmSize string = 'Standard_NC24ads_A100_v4'

@minValue(1)
@description('Most nodes the cluster may scale out to (bounded by your GPU quota).')
param computeMaxNodes int = 1

@description('How long an idle node is kept before the cluster scales back to zero (ISO 8601).')
param computeIdleTimeBeforeScaleDown string = 'PT30M'

@allowed([
  'Dedicated'
  'LowPriority'
])
@description('LowPriority is cheaper but nodes can be preempted mid-training.')
param computeVmPriority string = 'Dedicated'

@description('GitHub repository allowed to sign in, as owner/name.')
param githubRepository string

@description('GitHub Actions environment the workflows run in; the federated credential trusts only it.')
param githubEnvironment string = 'azureml'

@description('Tags applied to every resource.')
param tags object = {
  project: 'amlft'
}

// Built-in role definition ids (the same in every tenant).
var roleIds = {
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
}
var suffix = uniqueString(resourceGroup().id, workspaceName)
var githubIssuer = 'https://token.actions.githubusercontent.com'
var githubSubject = 'repo:${githubRepository}:environment:${githubEnvironment}'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take('${namePrefix}st${suffix}', 24)
  location: location
  tags: tags
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: take('${namePrefix}-kv-${suffix}', 24)
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-log-${suffix}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-appi-${suffix}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: workspaceName
    storageAccount: storage.id
    keyVault: keyVault.id
    applicationInsights: appInsights.id
  }
}

// Min 0 nodes: the cluster costs nothing between fine-tunes; `amlft check` warns if it ever drifts.
resource gpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: computeClusterName
  location: location
  tags: tags
  properties: {
    computeType: 'AmlCompute'
    description: 'GPU cluster for amlft fine-tuning; scales to zero when idle'
    properties: {
      vmSize: computeVmSize
      vmPriority: computeVmPriority
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: computeIdleTimeBeforeScaleDown
      }
      remoteLoginPortPublicAccess: 'Disabled'
    }
  }
}

// The identity GitHub Actions becomes. Its federated credential trusts one repository's one
// environment, so no other repository, branch-less fork or pull request can use it.
resource githubIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-github-${suffix}'
  location: location
  tags: tags
}

resource githubFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: githubIdentity
  name: 'github-${githubEnvironment}'
  properties: {
    issuer: githubIssuer
    subject: githubSubject
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// Fine-tune jobs, models, data assets and online endpoints; not computes or the workspace itself.
resource dataScientistOnWorkspace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, githubIdentity.id, roleIds.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.azureMLDataScientist)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// `amlft data` uploads training files to the workspace's default datastore (this account).
resource blobContributorOnStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, githubIdentity.id, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Read-only view of the resource group, so `az login` finds the subscription and `amlft check`
// can read the cluster and workspace resources it verifies.
resource readerOnResourceGroup 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, githubIdentity.id, roleIds.reader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.reader)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

output workspaceName string = workspace.name
output computeClusterName string = gpuCluster.name
@description('Repository variable AZURE_CLIENT_ID.')
output githubClientId string = githubIdentity.properties.clientId
@description('Repository variable AZURE_TENANT_ID.')
output tenantId string = subscription().tenantId
output federatedSubject string = githubSubject
